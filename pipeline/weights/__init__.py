"""Weights in and out: ImageNet weights and weight files, checkpoints in every layout, --init_from (with
class_maps/), export to ONNX/TorchScript."""
