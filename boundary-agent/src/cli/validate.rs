//! `boundary validate` (in progress)
