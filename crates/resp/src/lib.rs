//! Manifold's RESP front end: Redis Streams over the Redis protocol, so `redis-cli` and every
//! Redis client library work unchanged against the engine.
//!
//! A request's path: `server` accepts a connection → `connection` reads bytes and
//! `request::Decoder` frames them into commands → `commands` checks and runs each one against
//! the engine (through the connection's `Client`) → `reply::Reply` is encoded in the
//! connection's protocol version and written, one write per batch of pipelined requests.
//! A front end only translates: it never keeps data of its own.

pub mod args;
pub mod command;
pub mod commands;
pub mod connection;
pub mod errors;
pub mod reply;
pub mod request;
pub mod server;

pub use server::{REDIS_VERSION, RespConfig, serve};
