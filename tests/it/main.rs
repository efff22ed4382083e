//! Integration tests: real valkey-server, real `mosaic-spoke` processes, real mTLS with
//! certificates made per test, real child processes as agents. One module per area.

mod admin;
mod agents;
mod cli;
mod events;
mod hostile;
mod ops;
mod output;
mod queue;
mod rotation;
mod scheduler;
mod traces;
mod valkey;
mod watch;
