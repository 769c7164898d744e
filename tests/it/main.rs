//! The integration tests, one binary: the real `quota-proxy` binary (or the
//! library's `run`) against real servers on loopback (redis-server, test
//! upstreams, Django under gunicorn), never mocks. One module per feature;
//! `support/` holds what they share. Run one module with
//! `cargo test --test it <module>::`.

mod support;

mod attack_app_stack;
mod attack_availability;
mod attack_budget;
mod attack_client_leaving;
mod attack_content_type;
mod attack_cut;
mod attack_findings;
mod attack_identity;
mod attack_lifecycle;
mod attack_review;
mod attack_units;

mod batches;
mod body_memory;
mod config_errors;
mod config_mistakes;
mod decision_logs;
mod deploy;
mod deploy_docker_systemd;
mod deploy_memory;
mod deploy_monitoring;
mod deploy_shipped_run;
mod django;
mod docs_drift;
mod exact_counts;
mod flag_rules;
mod fuzz_seeds;
mod http2_limits;
mod identity;
mod identity_config;
mod identity_jwt;
mod jwt_fit;
mod jwt_parity;
mod levels;
mod limits;
mod limits_budget;
mod limits_connections;
mod load_smoke;
mod log_stalls;
mod no_spoofing;
mod open_files;
mod ops;
mod ops_signals;
mod outage;
mod parking;
mod parking_clients;
mod persian_calendar;
mod quota;
mod quota_bodies;
mod quota_identity;
mod redis_cluster_sentinel;
mod redis_faults;
mod redis_refusals;
mod redis_scale;
mod redis_upgrade;
mod reports;
mod reports_json;
mod routes;
mod shadow_status;
mod store;
mod store_lifecycle;
mod store_redis;
mod store_redis_connections;
mod store_settle;
mod streaming;
mod streaming_reports;
mod traces;
mod transparency;
mod transparency_connections;
mod upload;
mod upload_memory;
