//! The routing worker: reads `routing`, encodes each lead for the active decision module,
//! decides in batches and forwards to `partner_<route>`, hot-swapping modules on `NOTIFY`.
//!
//! Empty until the router issue lands; it will run on `pipeline::consumer`.
