//! Prompt formats: Koala/EasyLM, Alpaca, and Jinja chat templates.
