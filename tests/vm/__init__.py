"""Tests that boot real guests under QEMU (marker ``vm``)."""
