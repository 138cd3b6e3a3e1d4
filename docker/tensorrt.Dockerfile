# vmlp-deploy with TensorRT, on NVIDIA's TensorRT image (TensorRT 10.x, CUDA 12.x, Python 3.12 inside).
#   docker build -f docker/tensorrt.Dockerfile -t vmlp-deploy:tensorrt .
#   docker run --rm --gpus all -v "$PWD/out:/work/out" vmlp-deploy:tensorrt profile out/s2mlpv2_small --backend tensorrt
FROM nvcr.io/nvidia/tensorrt:24.12-py3

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/vmlp-deploy

# The image ships TensorRT's Python bindings; torch (CUDA build) is only needed to export zoo models.
RUN pip install torch==2.13.0 && python -c "import tensorrt; print('TensorRT', tensorrt.__version__)"

COPY pyproject.toml README.md ./
COPY vmlp_deploy ./vmlp_deploy
COPY models ./models
COPY calibration ./calibration
RUN pip install ".[plot]" cuda-python "nvidia-modelopt[onnx]" && vmlp-deploy --version

WORKDIR /work
ENTRYPOINT ["vmlp-deploy"]
CMD ["--help"]
