"""The servers ``curvedit bench peers`` measures curvedit against, one script each, serving the same ONNX graph.

Each script is run as its own process by the python that has that server installed (``pip install
'curvedit[peers]'``, or a separate environment), and imports nothing from curvedit: ``--onnx`` (the graph),
``--threads`` (ONNX Runtime intra-op threads), ``--port``, and the server's own batching settings. Each answers
``POST`` with a JSON body ``{"z": [[...]], "t": [[...]]}`` (KServe: the Open Inference Protocol's JSON) and
prints ``READY <port>`` once it serves.
"""
