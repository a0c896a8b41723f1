//! Settings held as `f32` written back as the decimal a user would type.
//!
//! Owns: the serde serializer for `f32` config fields. TOML floats are
//! f64, so serde writes an `f32` by widening it, and a run directory's
//! config.toml showed `lr = 0.0003000000142492354` for a configured 3e-4.
//! Writing the f32's shortest round-trip decimal instead (`0.0003`) reads
//! back to the very same f32, so a resumed run is unchanged. Does not own:
//! parsing or validating configs (`config`).

use serde::Serializer;

/// `#[serde(serialize_with = "crate::decimal::f32_shortest")]`: the f32 as
/// the f64 of its shortest decimal (Rust's `Display` of an f32 is the
/// shortest string that parses back to it).
pub fn f32_shortest<S: Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
    let widened = x.to_string().parse::<f64>().unwrap_or(*x as f64);
    s.serialize_f64(widened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Holder {
        #[serde(serialize_with = "f32_shortest")]
        x: f32,
    }

    #[test]
    fn an_f32_is_written_as_its_decimal_and_reads_back_to_the_same_bits() {
        for x in [3e-4f32, 3e-3, 1e-8, 1e-3, 0.1, 1.0, 0.0, 5e-6, 0.999, 123456.79, f32::MIN_POSITIVE, f32::MAX] {
            let text = toml::to_string(&Holder { x }).unwrap();
            let back: Holder = toml::from_str(&text).unwrap();
            assert_eq!(back.x.to_bits(), x.to_bits(), "{x}: {text}");
        }
        assert_eq!(toml::to_string(&Holder { x: 3e-4 }).unwrap().trim(), "x = 0.0003");
        assert_eq!(toml::to_string(&Holder { x: 1e-8 }).unwrap().trim(), "x = 0.00000001");
    }
}
