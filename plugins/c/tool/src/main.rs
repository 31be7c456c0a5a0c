//! `weir-c-bindgen`: writes the C bindings of the `stage` world of `wit/` into a folder.
//!
//! `weir-c-bindgen WIT_DIR OUT_DIR` writes `stage.h` and `stage.c`. No object file with the
//! component type is written: `wasm-component-ld --component-type wit/weir.wit` embeds the type
//! straight from the WIT when the component is linked.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result, bail};
use wit_bindgen_core::{Files, wit_parser::Resolve};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [wit, out] = &args[..] else {
        bail!("usage: weir-c-bindgen WIT_DIR OUT_DIR");
    };
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_path(wit)
        .with_context(|| format!("reading {wit}"))?;
    let world = resolve.select_world(&[package], Some("stage"))?;
    let opts = wit_bindgen_c::Opts {
        no_object_file: true,
        ..Default::default()
    };
    let mut files = Files::default();
    opts.build().generate(&mut resolve, world, &mut files)?;
    let out = PathBuf::from(out);
    fs::create_dir_all(&out)?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
