//! adclick's end-to-end tests: real `adclickd` processes on 127.0.0.1, the fault
//! ("Jepsen-style") suite and its checker. They drive the system only through
//! `adclick-client`, as users do. The harness arrives with the cluster server issue.
