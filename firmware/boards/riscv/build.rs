//! Puts QEMU virt's memory map (memory.x, read by riscv-rt's link.x) on the linker's path:
//! `-bios none` loads the ELF into RAM at 0x8000_0000, so "flash" is the first 2 MiB of RAM.
use std::{env, fs, path::PathBuf};

const MEMORY: &str = "MEMORY
{
  FLASH : ORIGIN = 0x80000000, LENGTH = 2M
  RAM : ORIGIN = 0x80200000, LENGTH = 2M
}
REGION_ALIAS(\"REGION_TEXT\", FLASH);
REGION_ALIAS(\"REGION_RODATA\", FLASH);
REGION_ALIAS(\"REGION_DATA\", RAM);
REGION_ALIAS(\"REGION_BSS\", RAM);
REGION_ALIAS(\"REGION_HEAP\", RAM);
REGION_ALIAS(\"REGION_STACK\", RAM);
";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("memory.x"), MEMORY).expect("OUT_DIR is writable");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg=-Tmemory.x");
    println!("cargo:rustc-link-arg=-Tlink.x");
    println!("cargo:rerun-if-changed=build.rs");
}
