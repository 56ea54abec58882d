"""Measurement code, in one place: ``curvedit bench engine | serve | reliability | peers | start``.

The engine benchmark (``engine*.py``, ``timing.py``), the serving load generators (``load.py``: a server process
and the clients that drive it; ``loadtest.py``: the batching table; ``scale.py``: ``--workers N`` beside a no-op
server of N processes), the no-op gRPC server (``noop.py``), the peer servers (``peers.py``, ``peer_servers/``),
the reliability probes (``reliability.py``) and start-up timing (``start.py``). Results go to the files of
``benchmarks/results/`` and from them into ``benchmarks/RESULTS.md`` (``results.py``).

The server never imports this package (tests/test_bench_package.py runs ``serve --workers 2`` with an import spy);
it imports the server's parts and starts ``curvedit serve`` as a subprocess.
"""
