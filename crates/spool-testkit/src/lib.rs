//! spool-testkit: the tools that prove the engine crash-safe, and the fixtures the MQTT tests
//! run against (a real Mosquitto broker, a fault-injecting TCP proxy, generated certificates).

pub mod certs;
pub mod model;
pub mod mosquitto;
pub mod proxy;
pub mod sim_vfs;

pub use sim_vfs::{CrashModel, Fault, SimVfs};
pub mod crash;
