# vmlp-deploy for CPU deployment: ONNX Runtime + OpenVINO (+ NNCF), PyTorch CPU build for export.
#   docker build -f docker/cpu.Dockerfile -t vmlp-deploy:cpu .
#   docker run --rm -v "$PWD/out:/work/out" vmlp-deploy:cpu export --model s2mlpv2_small -o out/s2mlpv2_small
FROM python:3.11.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/vmlp-deploy

# The CPU wheel of torch first, so that the package's torch requirement is already met (no CUDA download).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY vmlp_deploy ./vmlp_deploy
COPY models ./models
COPY calibration ./calibration
RUN pip install ".[plot]" && vmlp-deploy --version

WORKDIR /work
ENTRYPOINT ["vmlp-deploy"]
CMD ["--help"]
