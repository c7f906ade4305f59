//! Usage reports: requests, tokens and cost grouped by user, model, provider or day.
