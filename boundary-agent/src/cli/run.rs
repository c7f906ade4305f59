//! `boundary run` (in progress)
