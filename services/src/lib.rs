//! Circle's I/O: the event stores, the command path, the HTTP API and the `circle`
//! binary's building blocks. Domain rules live in `circle-events`; this crate only
//! moves data between them and the outside world.
//!
//! Start at [`app::Application::build`]: it wires a [`store::Store`], the
//! [`appender::Appender`] (group commit), the [`commands::CommandService`] and the
//! [`http`] router from [`config::Settings`].

pub mod access_log;
pub mod alloc;
pub mod app;
pub mod appender;
pub mod as_of;
pub mod audit;
pub mod auth;
mod cache;
pub mod care_teams;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod dashboard;
pub mod demo;
pub mod errors;
pub mod exports;
pub mod fhir;
pub mod http;
pub mod import;
pub mod leader;
pub mod metrics;
pub mod policy;
pub mod projector;
pub mod publisher;
pub mod secret;
pub mod slots;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod tokens;
