"""Accelerators: what a node has, found by the backends the node's config chooses.

    rmsbatch.node.devices.record    Accelerator, the one vendor-neutral record per allocatable
                               device (a whole GPU, a MIG instance, an AMD partition, or a
                               configured generic accelerator), and the visibility variables
    rmsbatch.node.devices.static    records from cluster.toml ([[nodes.gpus]])
    rmsbatch.node.devices.nvml      NVIDIA through NVML (module `pynvml`, package nvidia-ml-py)
    rmsbatch.node.devices.amd       AMD through AMD SMI (module `amdsmi`)
    rmsbatch.node.devices.sysfs     NVIDIA and AMD from /proc and /sys when no library loads
    rmsbatch.node.devices.discovery which backends run, in which order, and the check of what
                               was found against what cluster.toml declares
    rmsbatch.node.devices.health    what makes a device unfit (lost, ECC, row remapping, XID,
                               sustained thermal throttling): pure policy over samples
    rmsbatch.node.devices.monitor   the node's sampling process: telemetry and health, outside
                               job cgroups, reporting to rmsd

Only the backends call vendor libraries; the scheduler and the launcher see records.
Every backend takes its library module, or its filesystem root, as a parameter, so tests
hand it a fake module or a recorded tree.
"""
