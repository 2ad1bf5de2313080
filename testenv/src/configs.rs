//! Realistic Kong configurations of a chosen size, for tests and benchmarks: services,
//! each with a route and a plugin, shaped like Kong's `config_table` (flat rows, ids as
//! foreign keys, explicit nulls, timestamps, `\/` escapes as cjson writes them).

/// A `config_table` of about `target_bytes` bytes (at least one service).
pub fn config_table(target_bytes: usize, seed: u64) -> String {
    let mut services = Vec::new();
    let mut routes = Vec::new();
    let mut plugins = Vec::new();
    let mut size = 64;
    let mut i = 0u64;
    while size < target_bytes || i == 0 {
        let sid = uuid(seed, i, 1);
        let rid = uuid(seed, i, 2);
        let pid = uuid(seed, i, 3);
        let s = format!(
            r#"{{"id":"{sid}","name":"svc-{i}","host":"upstream-{i}.internal.example.com","port":8080,"protocol":"http","path":"\/api\/v1\/{i}","retries":5,"connect_timeout":60000,"read_timeout":60000,"write_timeout":60000,"enabled":true,"tags":["team-{t}","generated"],"client_certificate":null,"tls_verify":null,"tls_verify_depth":null,"ca_certificates":null,"created_at":1700000000,"updated_at":1700000000,"ws_id":"0dc6f45b-8f8d-40d2-a504-473544ee190b"}}"#,
            t = i % 17
        );
        let r = format!(
            r#"{{"id":"{rid}","name":"route-{i}","service":"{sid}","paths":["\/svc-{i}","\/v2\/svc-{i}"],"methods":["GET","POST"],"protocols":["http","https"],"hosts":null,"headers":null,"snis":null,"sources":null,"destinations":null,"strip_path":true,"preserve_host":false,"regex_priority":0,"path_handling":"v0","https_redirect_status_code":426,"request_buffering":true,"response_buffering":true,"tags":null,"created_at":1700000000,"updated_at":1700000000,"ws_id":"0dc6f45b-8f8d-40d2-a504-473544ee190b"}}"#
        );
        let p = format!(
            r#"{{"id":"{pid}","name":"rate-limiting","route":"{rid}","service":null,"consumer":null,"enabled":true,"protocols":["grpc","grpcs","http","https"],"config":{{"minute":{m},"hour":null,"policy":"local","fault_tolerant":true,"hide_client_headers":false,"limit_by":"consumer","redis":{{"host":null,"port":6379,"timeout":2000}}}},"tags":null,"created_at":1700000000,"updated_at":1700000000,"ws_id":"0dc6f45b-8f8d-40d2-a504-473544ee190b"}}"#,
            m = 60 + i % 100
        );
        size += s.len() + r.len() + p.len() + 3;
        services.push(s);
        routes.push(r);
        plugins.push(p);
        i += 1;
    }
    format!(
        r#"{{"_format_version":"3.0","_transform":false,"workspaces":[{{"id":"0dc6f45b-8f8d-40d2-a504-473544ee190b","name":"default","comment":"default workspace","config":{{}},"meta":{{}},"created_at":1700000000,"updated_at":1700000000}}],"services":[{}],"routes":[{}],"plugins":[{}]}}"#,
        services.join(","),
        routes.join(","),
        plugins.join(",")
    )
}

fn uuid(seed: u64, i: u64, kind: u64) -> String {
    let a = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ kind;
    let b = a.rotate_left(17) ^ 0x94d0_49bb_1331_11eb;
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        (a & 0xfff) as u16,
        (b >> 52) as u16 & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_valid_json_of_about_the_requested_size() {
        for target in [10_000, 1_000_000] {
            let c = config_table(target, 7);
            let v: serde_json::Value = serde_json::from_str(&c).unwrap();
            assert!(
                c.len() >= target && c.len() < target + 2_000,
                "{} for {target}",
                c.len()
            );
            assert_eq!(v["_format_version"], "3.0");
            assert_eq!(
                v["services"].as_array().unwrap().len(),
                v["routes"].as_array().unwrap().len()
            );
        }
        assert_ne!(config_table(10_000, 1), config_table(10_000, 2));
    }
}
