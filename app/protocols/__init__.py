"""Other serving systems' HTTP APIs over the same models: TensorFlow Serving's REST API (``/v1``) and the
Open Inference Protocol (KServe V2, ``/v2``). Both run the models' ``serving_default`` signature
through the same registry, graph functions and batchers as the five endpoints."""
