//! The Pingora side: the proxy glue around the gate, the upstream pool, the listener's TLS,
//! the admin endpoints, the access log, and the server that assembles them.

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod drain;
pub mod forward;
pub mod proxy;
pub mod server;
pub mod tls;
pub mod upstream;
pub mod watchdog;
