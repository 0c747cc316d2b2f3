//! Running the gate on a Pingora session: the route's mode, the verdict, and a rejection
//! written to the client. Embedders call [`gate_request`] from their `request_filter`.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::gate::{Gate, Verdict};
use crate::request::decision::{Decision, Reason};
use crate::request::route::Mode;

/// What the gate made of a request, as [`gate_request`] returns it.
#[derive(Debug)]
pub enum Gated {
    /// Rejected on an `enforce` route: the rejection is written, the request is done.
    Rejected(Reason),
    /// To be forwarded: hand it to [`crate::edge::forward::prepare_upstream_request`].
    Forward(Admitted),
}

/// A request on its way to the upstream, and how it got past the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The mode of the request's route.
    pub mode: Mode,
    /// The gate's verdict: an allow on an `enforce` route, any decision on an `observe`
    /// route, `None` on an `off` route (the token was not looked at).
    pub verdict: Option<Verdict>,
}

/// Runs the gate on a request, in the mode its path's route gives (`gate.routes()`). A
/// rejection on an `enforce` route is written to the client here (keep-alive kept).
pub async fn gate_request(gate: &Gate, session: &mut Session) -> Result<Gated> {
    let request = session.req_header();
    let client = session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(|addr| gate.client_ip(addr.ip(), &request.headers));
    let mode = gate.routes().mode_for(request.uri.path());
    if mode == Mode::Off {
        gate.metrics().count_ungated();
        return Ok(Gated::Forward(Admitted {
            mode,
            verdict: None,
        }));
    }
    let verdict = gate
        .check_as(&request.headers, &request.uri, client, mode)
        .await;
    match verdict.decision {
        Decision::Reject(reason) if mode == Mode::Enforce => {
            // Boxed: Pingora's write futures would otherwise be part of every request's
            // future, allowed ones included, which async_trait allocates per request.
            Box::pin(write_rejection(session, reason)).await?;
            Ok(Gated::Rejected(reason))
        }
        _ => Ok(Gated::Forward(Admitted {
            mode,
            verdict: Some(verdict),
        })),
    }
}

/// Writes the rejection a [`Reason`] stands for.
pub async fn write_rejection(session: &mut Session, reason: Reason) -> Result<()> {
    let rendered = reason.response();
    let mut header = ResponseHeader::build(rendered.status, Some(4))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("cache-control", "no-store")?;
    for (name, value) in rendered.headers {
        header.insert_header(name, value)?;
    }
    header.set_content_length(rendered.body.len())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(rendered.body)), true)
        .await
}
