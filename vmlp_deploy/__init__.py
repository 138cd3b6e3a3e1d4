"""vmlp-deploy: exact, fast deployment of vision MLPs and MetaFormers.

The pipeline is a straight line, one module per stage: ``model`` -> ``export`` -> ``passes`` -> ``quantize``
-> ``profile``. The zoo lives in the repository's top-level ``models/`` and installs as ``vmlp_deploy.models``.
"""

__version__ = "0.1.0"
