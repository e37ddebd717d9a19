//! libqnet from Rust with plain `extern "C"` (no crates): runs the forward relay-cell
//! vector of spec/vectors/cells.json through the library.
//!
//! Build (from bindings/c, after `make`):
//!     rustc -O --edition 2021 examples/rust/main.rs -o build/qnet_rust_example \
//!         -L build -l static=qnet -l sodium
//! Run:
//!     build/qnet_rust_example ../../spec/vectors/cells.json
//!
//! The client derives three hops' layer keys, seals the relay plaintext for the exit and
//! adds the middle and entry layers; every intermediate body must equal the vector. Then
//! the relays peel their layers and the exit opens and decodes the cell. Exit status 0
//! when everything matches.

use std::os::raw::c_int;
use std::process::ExitCode;

const BODY_LEN: usize = 2040;
const PLAINTEXT_LEN: usize = 2024;

#[link(name = "qnet")]
extern "C" {
    fn qnet_init() -> c_int;
    fn qnet_reason(status: c_int) -> *const std::os::raw::c_char;
    fn qnet_cell_layer_keys(
        material: *const u8,
        material_len: usize,
        forward: *mut u8,
        backward: *mut u8,
    ) -> c_int;
    fn qnet_cell_seal(
        key: *const u8,
        counter: u64,
        plaintext: *const u8,
        plaintext_len: usize,
        body_out: *mut u8,
    ) -> c_int;
    fn qnet_cell_xor(key: *const u8, counter: u64, input: *const u8, len: usize, out: *mut u8)
        -> c_int;
    fn qnet_cell_open(
        key: *const u8,
        counter: u64,
        body: *const u8,
        body_len: usize,
        plaintext_out: *mut u8,
    ) -> c_int;
    fn qnet_relay_cell_decode(
        plaintext: *const u8,
        plaintext_len: usize,
        relay_command: *mut u8,
        stream_id: *mut u16,
        data_len: *mut usize,
    ) -> c_int;
}

fn check(status: c_int, what: &str) -> Result<(), String> {
    if status == 0 {
        return Ok(());
    }
    let reason = unsafe { std::ffi::CStr::from_ptr(qnet_reason(status)) };
    Err(format!("{what}: {}", reason.to_string_lossy()))
}

/// The string value of the `n`-th occurrence (0-based) of `"key": "..."` in `json`.
/// Enough for the flat hex fields of the vector files; not a JSON parser.
fn field(json: &str, key: &str, n: usize) -> Result<String, String> {
    let needle = format!("\"{key}\":");
    let mut rest = json;
    for _ in 0..n {
        let at = rest.find(&needle).ok_or(format!("field {key} #{n} missing"))?;
        rest = &rest[at + needle.len()..];
    }
    let at = rest.find(&needle).ok_or(format!("field {key} #{n} missing"))?;
    let value = rest[at + needle.len()..].trim_start();
    let value = value.strip_prefix('"').ok_or(format!("field {key} is not a string"))?;
    let end = value.find('"').ok_or("unterminated string")?;
    Ok(value[..end].to_string())
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    if s.len() % 2 != 0 {
        return Err("odd hex length".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn run(path: &str) -> Result<(), String> {
    let json = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    check(unsafe { qnet_init() }, "qnet_init")?;

    // hop keys: hops[j].hop_key_material -> forward key, compared with hops[j].forward
    let mut forward = [[0u8; 32]; 3];
    for (j, key) in forward.iter_mut().enumerate() {
        let material = hex(&field(&json, "hop_key_material", j)?)?;
        let mut backward = [0u8; 32];
        check(
            unsafe {
                qnet_cell_layer_keys(material.as_ptr(), material.len(), key.as_mut_ptr(),
                                     backward.as_mut_ptr())
            },
            "layer keys",
        )?;
        // "forward" occurs once per hop, then once more as the name of the forward cell
        if key.to_vec() != hex(&field(&json, "forward", j)?)? {
            return Err(format!("hop {j}: forward key differs"));
        }
    }

    let plaintext = hex(&field(&json, "plaintext", 0)?)?;
    if plaintext.len() != PLAINTEXT_LEN {
        return Err("plaintext length".into());
    }
    let counter = 0u64;
    let mut body = [0u8; BODY_LEN];
    check(
        unsafe {
            qnet_cell_seal(forward[2].as_ptr(), counter, plaintext.as_ptr(), plaintext.len(),
                           body.as_mut_ptr())
        },
        "seal",
    )?;
    for (j, name) in [(1usize, "sealed_by_exit_key"), (0, "after_middle_layer")] {
        if body.to_vec() != hex(&field(&json, name, 0)?)? {
            return Err(format!("{name} differs"));
        }
        let input = body;
        check(
            unsafe { qnet_cell_xor(forward[j].as_ptr(), counter, input.as_ptr(), BODY_LEN,
                                   body.as_mut_ptr()) },
            "xor",
        )?;
    }
    if body.to_vec() != hex(&field(&json, "wire_to_entry", 0)?)? {
        return Err("wire_to_entry differs".into());
    }

    // the entry and middle peel their layers; the exit opens
    for j in 0..2 {
        let input = body;
        check(
            unsafe { qnet_cell_xor(forward[j].as_ptr(), counter, input.as_ptr(), BODY_LEN,
                                   body.as_mut_ptr()) },
            "peel",
        )?;
    }
    let mut opened = [0u8; PLAINTEXT_LEN];
    check(
        unsafe { qnet_cell_open(forward[2].as_ptr(), counter, body.as_ptr(), BODY_LEN,
                                opened.as_mut_ptr()) },
        "open",
    )?;
    if opened.to_vec() != plaintext {
        return Err("opened plaintext differs".into());
    }
    let (mut command, mut stream_id, mut data_len) = (0u8, 0u16, 0usize);
    check(
        unsafe { qnet_relay_cell_decode(opened.as_ptr(), PLAINTEXT_LEN, &mut command,
                                        &mut stream_id, &mut data_len) },
        "decode",
    )?;
    let data = &opened[5..5 + data_len];
    if data != hex(&field(&json, "data", 0)?)?.as_slice() {
        return Err("relay data differs".into());
    }

    // one flipped bit and the exit refuses the cell
    body[100] ^= 1;
    let status = unsafe {
        qnet_cell_open(forward[2].as_ptr(), counter, body.as_ptr(), BODY_LEN, opened.as_mut_ptr())
    };
    let reason = unsafe { std::ffi::CStr::from_ptr(qnet_reason(status)) }.to_string_lossy();
    if reason != "bad_tag" {
        return Err(format!("tampered cell gave {reason}, want bad_tag"));
    }
    println!(
        "cells.json forward vector: ok (command {command}, stream {stream_id}, {data_len} data bytes; tampered cell: {reason})"
    );
    Ok(())
}

fn main() -> ExitCode {
    let path = std::env::args().nth(1).unwrap_or("../../spec/vectors/cells.json".into());
    match run(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}
