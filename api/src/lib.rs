//! The Custos service: configuration, PostgreSQL (private cluster, pools per tenant), the event
//! store, the projector, authentication, GraphQL, HTTP and the command line.

pub mod app;
pub mod auth;
pub mod authz;
pub mod bench;
pub mod bench_datasheets;
pub mod bench_privacy;
pub mod blind_index;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
pub mod event_store;
pub mod graphql;
pub mod history;
pub mod http;
pub mod integrity;
pub mod keys;
pub mod projector;
pub mod reports;
pub mod service;
pub mod subject_keys;
pub mod telemetry;
pub mod tenancy;
pub mod two_factor;

pub use app::Application;
pub use config::Config;
