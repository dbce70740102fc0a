"""The measuring side of vend's performance issue: builds the content tree, starts each
peer on loopback, drives it with wrk, and writes the results.

How one run travels (``benchmarks/compare.py``)::

    content.build_tree()          three mounts under benchmarks/work/mounts, probes on the last
    peers.PEERS[name].start()     generated config -> processes.start_server() (core 0)
    probes.verify_peer()          every probe answered 200 with the exact bytes, or the peer fails
    loads.measure()               wrk (core 1) x runs, CPU ticks and memory of the server tree
    report.write_results()        results/YYYY-MM-DD.md + raw wrk output + PNG chart
    processes.stop_server()       SIGTERM then SIGKILL to each process group it started
"""
