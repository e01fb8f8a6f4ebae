//! Why a link failed or a request was not taken, by kind.
//!
//! The kinds are what the connection task and the feeder branch on; each error is worded for
//! the log as before (the wording is in `describe.rs`).

use rumqttc::v5 as r5;

use crate::mqtt::describe::Certificate;

/// How the message of [`LinkError::Oversized`] starts.
const OVERSIZED: &str = "the broker sent a packet over our 64 KiB limit";

/// Why [`EventLoop::poll`](super::EventLoop::poll) failed: the link is gone, or could not be
/// made. The connection task turns the subscriptions off on [`LinkError::Oversized`], and
/// logs a failed connect once per [`LinkError::cause`] and server until the cause changes.
#[derive(Debug, thiserror::Error)]
pub(in crate::mqtt) enum LinkError {
    /// The broker answered our CONNECT with a refusal (a wrong login, not authorized, ...).
    #[error("{message}")]
    Refused { message: String },
    /// MQTT 3.1.1: the broker sent a packet over our incoming limit (a big retained message
    /// on a topic we subscribe to, say).
    #[error("{OVERSIZED}: {message}")]
    Oversized { message: String },
    /// The link is up but the broker stopped acknowledging publishes: the feeder asked for a
    /// new one.
    #[error("the broker stopped acknowledging publishes")]
    Unacknowledged,
    /// A TLS certificate problem the message names, with a hint; rustls words some of them
    /// with the time they were checked at, which changes at every attempt.
    #[error("{message}")]
    Certificate {
        problem: Certificate,
        message: String,
    },
    /// The broker broke the MQTT exchange. `what` is rumqttc's name for it, without the packet
    /// id or size its message carries.
    #[error("{message}")]
    Protocol { what: &'static str, message: String },
    /// Anything else: the network, a timeout, a TLS alert, a closed link. The same cause is
    /// worded the same way each time.
    #[error("{message}")]
    Network { message: String },
}

impl LinkError {
    /// What two failures share when they are the same cause, for the log: the kind, and of
    /// the message only what stays the same from one attempt to the next.
    pub fn cause(&self) -> String {
        match self {
            LinkError::Refused { message } => format!("refused: {message}"),
            LinkError::Oversized { .. } => "oversized".into(),
            LinkError::Unacknowledged => "unacknowledged".into(),
            LinkError::Certificate { problem, .. } => format!("certificate: {problem:?}"),
            LinkError::Protocol { what, .. } => format!("protocol: {what}"),
            LinkError::Network { message } => format!("network: {message}"),
        }
    }
}

/// The client did not take a request: its channel is full, or the connection task is gone.
/// Worded as rumqttc words it. Boxed: rumqttc's error holds the whole request.
#[derive(Debug, thiserror::Error)]
pub(in crate::mqtt) enum ClientError {
    #[error(transparent)]
    V4(Box<rumqttc::ClientError>),
    #[error(transparent)]
    V5(Box<r5::ClientError>),
}

impl From<rumqttc::ClientError> for ClientError {
    fn from(e: rumqttc::ClientError) -> Self {
        ClientError::V4(Box::new(e))
    }
}

impl From<r5::ClientError> for ClientError {
    fn from(e: r5::ClientError) -> Self {
        ClientError::V5(Box::new(e))
    }
}
