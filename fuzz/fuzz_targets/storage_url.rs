//! Any storage URL: parsing never panics, and an accepted URL round-trips through its
//! canonical form and yields keys without empty segments or a leading slash.
#![no_main]

use kong_fallback_operator::kong::StorageUrl;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Ok(url) = StorageUrl::parse(data) {
        let again = StorageUrl::parse(&url.to_string()).expect("the canonical form parses");
        assert_eq!(again, url);
        let key = url.config_key("3.6.1.4");
        assert!(!key.starts_with('/') && !key.contains("//"), "{key}");
        assert!(key.ends_with("3.6.1.4/config.json"));
    }
});
