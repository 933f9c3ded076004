//! A driver that runs each node on its own OS thread with real timers, an in-process faulty network and a mio TCP transport (to come, issue 6).
