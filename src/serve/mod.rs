//! `appliance serve`: an OpenAI-compatible HTTP server over the local
//! generation engine, so that any OpenAI client (and this project's own
//! endpoint policy) can sample from the model being trained.
//!
//! Owns: the wire types (`api`, shared with the client in
//! `agent::endpoint`) and the server (`server`): routes, authentication,
//! request validation and responses. Does not own generation, batching or
//! the bounded queue (see `engine::service`), tokenization or chat
//! formatting (`model`), or any client. Sits above `engine` and `model`,
//! below `agent` and `cli`; it never imports `agent`.

pub mod api;
pub mod server;

pub use server::{bind, RunningServer, ServeOptions};
