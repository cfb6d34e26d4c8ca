//! The dry run of the program that sizes the arena: work buffers, scratch, Dense width and
//! the skip-stack slots.

use super::*;

/// Dry run of the program: work-buffer size, scratch, Dense width and the skip-stack slots.
pub(super) fn plan(arch: &NcsnppArch, params: &[ModP]) -> Result<Needs> {
    let s = arch.config.image_size;
    let mut needs = Needs::default();
    needs.work(arch.channels() * s * s);
    let (mut c, mut res) = (0usize, s);
    let mut stack: Vec<usize> = Vec::new();
    let mut next = 0;
    for &op in &arch.program {
        match op {
            Op::InputConv(i) => {
                let ModP::Conv(cv) = &params[i] else {
                    bail!("all_modules.{i}: expected a conv");
                };
                needs.conv(cv, res);
                c = cv.conv.c_out;
            }
            Op::Res(i) => {
                let ModP::Res(r) = &params[i] else {
                    bail!("all_modules.{i}: expected a ResBlock");
                };
                let ro = r.block.res_out();
                needs.work(r.block.c_in * res.max(ro) * res.max(ro));
                needs.conv(&r.conv0, ro);
                needs.conv(&r.conv1, ro);
                if let Some(c2) = &r.conv2 {
                    needs.conv(c2, ro);
                }
                needs.dense = needs.dense.max(r.block.c_out);
                (c, res) = (r.block.c_out, ro);
            }
            Op::Attn(i) => {
                let ModP::Attn(at) = &params[i] else {
                    bail!("all_modules.{i}: expected an attention block");
                };
                needs.work(3 * at.channels * res * res);
                needs.scratch = needs.scratch.max(k::attention_scratch_len(res * res));
            }
            Op::Push => {
                let len = c * res * res;
                if needs.slots.len() == stack.len() {
                    needs.slots.push((next, len));
                    next += len;
                } else if needs.slots[stack.len()].1 < len {
                    bail!(
                        "ncsnpp: skip slot {} reused with a larger tensor",
                        stack.len()
                    );
                }
                stack.push(len);
            }
            Op::PopConcat => {
                let Some(len) = stack.pop() else {
                    bail!("ncsnpp: pop from an empty skip stack");
                };
                c += len / (res * res);
                needs.work(c * res * res);
            }
            Op::InputSkip(i) => {
                let ModP::Conv(cv) = &params[i] else {
                    bail!("all_modules.{i}: expected the Combine conv");
                };
                needs.conv(cv, res);
            }
            Op::OutputHead { conv, .. } => {
                let ModP::Conv(cv) = &params[conv] else {
                    bail!("all_modules.{conv}: expected the head conv");
                };
                needs.conv(cv, res);
            }
        }
    }
    Ok(needs)
}
