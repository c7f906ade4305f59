//! `boundary check` (in progress)
