"""vmlp-deploy: exact, fast deployment of vision MLPs and MetaFormers."""

__version__ = "0.1.0"
