//! Bridge: the governed LLM gateway.
//!
//! Agents call Bridge instead of the providers. Bridge authenticates the user, forwards the
//! request (streaming byte for byte) to the configured upstream, and turns every exchange into
//! an [`record::InterceptionRecord`] that is stored, logged and exported off the hot path.

pub mod record;
