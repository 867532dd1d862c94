//! spool-testkit: the tools that prove the engine crash-safe.

pub mod model;
pub mod sim_vfs;

pub use sim_vfs::{CrashModel, Fault, SimVfs};
pub mod crash;
