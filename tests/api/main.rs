//! Integration tests: the real service over HTTP, against the Slack, Stripe and SMTP stand-ins
//! on loopback, with a real sled database in a temporary directory.

mod approvals;
mod approvers;
mod backups;
mod crash;
mod decisions;
mod deploy;
mod desk;
mod digest;
mod durability;
mod emails;
mod events;
mod faults;
mod happy_path;
mod helpers;
mod http_api;
mod keys;
mod load;
mod logs;
mod openapi;
mod pacing;
mod policy;
mod process;
mod randomized;
mod replicas;
mod restart;
mod same_payment;
mod signatures;
mod socket_mode;
mod validation;
mod webhooks;
