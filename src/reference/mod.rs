//! Reference servers that speak the protocol: an auth origin and a demo streaming origin,
//! used by `epochgate demo` and by the tests.

pub mod auth_origin;
pub mod origin_command;
pub mod signing;
pub mod stream_origin;

/// Serves a router on an already bound listener until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
