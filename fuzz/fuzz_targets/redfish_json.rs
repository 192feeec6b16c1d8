//! Any body a BMC may send: the JSON the Redfish client reads (service root, systems
//! collection, system, task monitor, error bodies, `Location` headers) must be read without
//! a panic, and what the client reads from it must be consistent: the reset it picks is one
//! the BMC offers, an ETag header wins over the body's, a failed task is one of the failed
//! states, and a `Location` turns into a path of the same BMC.
#![no_main]

use bootfabric::redfish::{
    client::{
        choose_reset, error_message, failed_task_state, members, path_of, ServiceRoot, System,
    },
    PowerState,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const PATH: &str = "/redfish/v1/Systems/1";

fuzz_target!(|data: &[u8]| {
    // Bodies read as bytes, JSON or not.
    let _ = error_message(data);
    if let Some(state) = failed_task_state(data) {
        assert!(
            ["Exception", "Killed", "Cancelled"].contains(&state.as_str()),
            "{state}"
        );
    }
    if let Ok(location) = std::str::from_utf8(data) {
        // A URL without a path means the root; otherwise the path is the URL's own tail.
        let p = path_of(location);
        assert!(
            location.ends_with(p) || p == "/",
            "{p:?} is not the tail of {location:?}"
        );
        if location.contains("://") {
            assert!(p.starts_with('/'), "{location:?} gave {p:?}");
        }
    }

    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _ = ServiceRoot::parse(&v);
    let listed = v
        .get("Members")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    assert!(members(&v).len() <= listed);

    let header = data
        .first()
        .is_some_and(|b| b & 1 == 1)
        .then_some("\"hdr\"");
    let sys = System::parse(PATH, &v, header);
    assert_eq!(sys.path, PATH);
    if header.is_some() {
        assert_eq!(sys.etag.as_deref(), header, "the ETag header wins");
    }
    for power in [sys.power, PowerState::On, PowerState::Off] {
        match choose_reset(power, &sys.reset_types) {
            Ok(kind) => assert!(
                sys.reset_types.is_empty() || sys.reset_types.contains(&kind),
                "{kind} is not offered: {:?}",
                sys.reset_types
            ),
            Err(_) => assert!(!sys.reset_types.is_empty()),
        }
    }
});
