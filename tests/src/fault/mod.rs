//! The Jepsen-style fault suite: real `adclickd` processes behind a fault proxy, a
//! nemesis, a recording workload, and a checker that decides whether any click was lost
//! or counted twice. See docs/testing.md for what it covers and how to run it.
//!
//! - [`proxy`]: the TCP fault proxy every node-to-node connection goes through;
//! - [`nemesis`]: the faults and the seeded schedule;
//! - [`workload`]: the client processes, recording into a [`history`];
//! - [`model`]: the checker's own replay of the committed log;
//! - [`checker`]: the verdict;
//! - [`run`]: one run, start to verdict.

pub mod checker;
pub mod history;
pub mod model;
pub mod nemesis;
pub mod proxy;
pub mod run;
pub mod workload;
