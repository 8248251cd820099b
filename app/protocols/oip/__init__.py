"""Stubs generated from grpc_predict_v2.proto (the Open Inference Protocol's gRPC service): ``make grpc-stubs``."""
