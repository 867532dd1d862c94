//! The client against a real server: `spool_server::Server` over an in-memory store on a free
//! port of 127.0.0.1, in the test's own runtime. Misbehaving servers (a reply that is not
//! RESP, a connection dropped mid-request) are plain sockets scripted by the test.

mod conn;
mod queue;
#[cfg(feature = "tls")]
mod tls;
mod topic;

use spool_client::{Client, Options};
use spool_engine::Store;
use spool_server::{Server, ServerConfig, Service};

/// A running server and the store behind it (kept to restart a server on the same data).
pub struct Fixture {
    pub server: Server,
    pub store: Store,
    pub config: ServerConfig,
}

impl Fixture {
    pub async fn start() -> Fixture {
        Fixture::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Fixture {
        let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("address"));
        tweak(&mut config);
        let store = Store::in_memory().expect("in-memory store");
        let server = Server::start(config.clone(), Service::open(store.clone()))
            .await
            .expect("server starts");
        config.bind = server.local_addr();
        Fixture {
            server,
            store,
            config,
        }
    }

    pub fn addr(&self) -> String {
        self.server.local_addr().to_string()
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr()).await.expect("connect")
    }

    pub async fn client_with(&self, tweak: impl FnOnce(Options) -> Options) -> Client {
        Client::connect_with(tweak(Options::new(self.addr())))
            .await
            .expect("connect")
    }

    /// Stops the server (closing every connection) and starts a new one on the same address
    /// and store.
    pub async fn stop(self) -> (Store, ServerConfig) {
        self.server.shutdown().await;
        (self.store, self.config)
    }

    pub async fn restart(store: Store, config: ServerConfig) -> Fixture {
        let server = Server::start(config.clone(), Service::open(store.clone()))
            .await
            .expect("server restarts on the same address");
        Fixture {
            server,
            store,
            config,
        }
    }
}
