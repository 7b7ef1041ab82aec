//! Usage tracking for applications: record usage events with ordinary `tracing` macros and ship
//! them over OTLP to the usage collector.
//!
//! # Layout
//!
//! - [`catalog`]: the built-in usage events, their attribute keys and types, and the table and
//!   column each one is written to. The collector derives its mapping from this module, so an app
//!   and the collector can never disagree about a key.

pub mod catalog;
