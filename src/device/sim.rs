//! The simulated device (temporary: errors until the PTX interpreter lands).
use anyhow::{bail, Result};
pub struct SimDevice;
impl SimDevice {
    pub fn new() -> Result<Self> {
        bail!("the simulated device is not built yet")
    }
}
impl super::Device for SimDevice {
    fn name(&self) -> String { "sim".into() }
    fn alloc(&mut self, _: usize) -> Result<super::DevicePtr> { bail!("sim") }
    fn free(&mut self, _: super::DevicePtr) -> Result<()> { bail!("sim") }
    fn copy_h2d(&mut self, _: super::DevicePtr, _: &[u8]) -> Result<()> { bail!("sim") }
    fn copy_d2h(&mut self, _: super::DevicePtr, _: &mut [u8]) -> Result<()> { bail!("sim") }
    fn launch(&mut self, _: &str, _: super::LaunchConfig, _: &[super::KernelArg]) -> Result<()> { bail!("sim") }
    fn gemm_f32_nt(&mut self, _: super::DevicePtr, _: super::DevicePtr, _: super::DevicePtr, _: usize, _: usize, _: usize) -> Result<()> { bail!("sim") }
    fn synchronize(&mut self) -> Result<()> { bail!("sim") }
}
