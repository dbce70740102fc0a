"""The measuring side of vend's performance issue: builds the content tree, starts each
peer on loopback, drives it with wrk, and writes the results.

How one run travels (``benchmarks/compare.py``)::

    content.build_tree()          three mounts under benchmarks/work/mounts, probes on the last
    peers.PEERS[name].start()     generated config (configs; the production path: the shipped
                                  apache/vend.conf, Defines edited) -> launch.launch():
                                  core 0, own process group, own control group (cgroups)
    probes.verify_peer()          every probe answered 200 with the exact bytes, or the peer fails
    loads.measure()               wrk (wrk.run_wrk, core 1) x runs; server CPU from its control
                                  group, memory and core time from /proc (procstat)
    report.write_results()        results/YYYY-MM-DD.md (targets.py checks issue 10's targets)
                                  + raw wrk output + JSON + chart.py's PNG
    processes.stop_server()       SIGTERM then SIGKILL to each process group it started

``apache_etc`` (run by benchmarks/compare, standard library only) saves /etc/apache2
before packages are installed, restores it, and checks it is byte-identical at exit.
"""
