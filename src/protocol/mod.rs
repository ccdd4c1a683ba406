//! The Redis wire protocol: decoding client requests and encoding replies; and, in [`client`],
//! the other direction (commands out, replies in) for talking to Redis servers.
//!
//! The codec is pure: bytes in, frames out. It does no I/O and never panics
//! on any input. A request is refused as soon as what it announces exceeds
//! [`Limits`] (argument count, argument size, inline line length) or a header
//! line passes 64 KiB, without waiting for the announced bytes, and nothing
//! is allocated on the strength of an announced length alone.

pub mod client;
pub mod reply;
pub mod request;

pub use reply::{Protocol, Reply};
pub use request::{Limits, ParseError, decode, parse_int};
