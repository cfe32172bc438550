using System.Collections.Concurrent;
using System.Globalization;
using DriverIsolation.Protocol;

namespace DriverIsolation.Kernel.Hardware;

/// <summary>
/// The simulated machine under the kernel: physical memory, the kernel's region of it, the IOMMU,
/// and the device models. It binds a device model to the driver instance that drives it (an
/// IOMMU domain per driver instance, a fresh DMA window per device) and checks every DMA request
/// and register write from a host against what that host was given.
/// </summary>
internal sealed class Machine : IDisposable
{
    private const ulong WindowBase = 0x1_0000_0000;
    private const ulong WindowStride = 0x1000_0000;

    private readonly Dictionary<string, DeviceModel> _models = new(StringComparer.OrdinalIgnoreCase);
    private readonly Dictionary<KernelDriver, DriverDomain> _domains = [];
    private readonly ConcurrentDictionary<int, DeviceBinding> _bindings = new();
    private readonly Lock _gate = new();
    private int _nextSlot;

    private readonly int _maxDmaBytesPerDriver;

    public Machine(KernelOptions options, TimeProvider time)
    {
        _maxDmaBytesPerDriver = options.MaxDmaBytesPerDriver;
        Memory = new PhysicalMemory(options.PhysicalMemoryBytes, options.KernelRegionBytes);
        KernelMemory = new KernelMemory(Memory);
        Iommu = new Iommu(Memory, KernelMemory, options.IommuMode, options.Iommu, time);
        Dma = new DmaEngine(Memory, Iommu);
    }

    public PhysicalMemory Memory { get; }

    public KernelMemory KernelMemory { get; }

    public Iommu Iommu { get; }

    public DmaEngine Dma { get; }

    public IReadOnlyList<DeviceModel> Devices
    {
        get
        {
            lock (_gate)
            {
                return [.. _models.Values];
            }
        }
    }

    public DeviceModel? Device(string name)
    {
        lock (_gate)
        {
            return _models.GetValueOrDefault(name);
        }
    }

    /// <summary>Gives a driver instance its device: the model (created on first use, kept across
    /// driver restarts), a DMA window of fresh frames, the device attached to the driver's domain,
    /// and its interrupt routed to <paramref name="host"/>.</summary>
    public HardwareBinding Bind(KernelDriver driver, int deviceId, string deviceName, HardwareManifest hardware, IHostChannel host)
    {
        DeviceBinding binding;
        lock (_gate)
        {
            if (!_models.TryGetValue(deviceName, out var model))
            {
                var requester = new RequesterId(0, (byte)(++_nextSlot), 0);
                model = hardware.Kind switch
                {
                    "block" => new BlockDeviceModel(deviceName, requester, Dma, hardware.CapacityBytes),
                    "nic" => new NicModel(deviceName, requester, Dma, string.Create(CultureInfo.InvariantCulture, $"02:00:00:00:00:{requester.Device:x2}")),
                    _ => throw new NotSupportedException($"no device model for hardware kind \"{hardware.Kind}\""),
                };
                _models[deviceName] = model;
                if (model is NicModel nic && hardware.Peer is { } peerName)
                {
                    nic.Peer = _models.GetValueOrDefault(peerName) as NicModel;
                    nic.Peer?.Peer ??= nic;
                }
            }

            if (!_domains.TryGetValue(driver, out var domain))
            {
                _domains[driver] = domain = new DriverDomain(Iommu.CreateDomain(driver.Name));
            }

            var pages = hardware.DmaWindowBytes / PhysicalMemory.FrameSize;
            var held = domain.Bindings.Sum(b => (long)b.Pages * PhysicalMemory.FrameSize);
            if (held + hardware.DmaWindowBytes > _maxDmaBytesPerDriver)
            {
                throw new InsufficientMemoryException(string.Create(CultureInfo.InvariantCulture,
                    $"{driver.Name} would hold {held + hardware.DmaWindowBytes} bytes of DMA windows, over the limit of {_maxDmaBytesPerDriver} (KernelOptions.MaxDmaBytesPerDriver)"));
            }

            var frame = Memory.DmaFrames.TryAllocate(pages)
                ?? throw new InsufficientMemoryException($"physical memory has no {pages} free frames in a row for the DMA window of {deviceName}");
            var physical = frame << PhysicalMemory.FrameShift;
            var deviceAddress = Iommu.Mode == IommuMode.Off ? (ulong)physical : WindowBase + ((ulong)domain.Bindings.Count * WindowStride);
            Iommu.AddWindow(domain.Iommu, deviceAddress, (ulong)hardware.DmaWindowBytes);
            Iommu.Attach(model.Requester, domain.Iommu);
            binding = new DeviceBinding(deviceId, driver, host, model, domain, frame, pages, deviceAddress);
            domain.Bindings.Add(binding);
            _bindings[deviceId] = binding;
            model.ConnectInterrupt(vector => host.Interrupt(deviceId, vector));
        }

        return new HardwareBinding(binding.Model.Kind, binding.Model.Requester.ToString(), new Dictionary<string, string>(binding.Model.Properties),
            Memory.Path, binding.Frame << PhysicalMemory.FrameShift, binding.Pages * PhysicalMemory.FrameSize, binding.DeviceAddress);
    }

    /// <summary>The driver instance is gone: its devices are reset and disconnected, its domain
    /// torn down (every mapping revoked, the IOTLB flushed) and its windows' frames freed. A late
    /// DMA from a device it programmed faults from here on.</summary>
    public void Unbind(KernelDriver driver)
    {
        lock (_gate)
        {
            if (!_domains.Remove(driver, out var domain))
            {
                return;
            }

            foreach (var binding in domain.Bindings)
            {
                binding.Model.ConnectInterrupt(null);
                binding.Model.Reset();
                _bindings.TryRemove(binding.DeviceId, out _);
            }

            Iommu.DestroyDomain(domain.Iommu);
            foreach (var binding in domain.Bindings)
            {
                Memory.DmaFrames.Free(binding.Frame, binding.Pages);
            }
        }
    }

    /// <summary>A host asks to map pages of its window. Null when done; else what was wrong (a
    /// protocol violation: the host named something that is not its own).</summary>
    public string? Map(IHostChannel from, int deviceId, int firstPage, int pages, DmaAccess access)
    {
        if (Own(from, deviceId, out var binding) is { } error)
        {
            return error;
        }

        if (firstPage < 0 || pages <= 0 || firstPage > binding.Pages - pages)
        {
            return string.Create(CultureInfo.InvariantCulture, $"DMA map of pages {firstPage}+{pages} is outside the {binding.Pages}-page window of device {deviceId}");
        }

        return Iommu.TryMap(binding.Domain.Iommu, binding.DeviceAddress + ((ulong)firstPage * Iommu.PageSize),
            (binding.Frame + firstPage) << PhysicalMemory.FrameShift, pages, access, out var refused) ? null : refused;
    }

    public string? Unmap(IHostChannel from, int deviceId, int firstPage, int pages)
    {
        if (Own(from, deviceId, out var binding) is { } error)
        {
            return error;
        }

        if (firstPage < 0 || pages <= 0 || firstPage > binding.Pages - pages)
        {
            return string.Create(CultureInfo.InvariantCulture, $"DMA unmap of pages {firstPage}+{pages} is outside the {binding.Pages}-page window of device {deviceId}");
        }

        return Iommu.TryUnmap(binding.Domain.Iommu, binding.DeviceAddress + ((ulong)firstPage * Iommu.PageSize), pages, out var refused) ? null : refused;
    }

    public string? WriteRegister(IHostChannel from, int deviceId, int registerIndex, ulong value)
    {
        if (Own(from, deviceId, out var binding) is { } error)
        {
            return error;
        }

        binding.Model.WriteRegister(registerIndex, value);
        return null;
    }

    /// <summary>A kernel structure's address: a word in the second canary frame, where a wild
    /// store or DMA is caught by the integrity check.</summary>
    public const long KernelTargetAddress = PhysicalMemory.FrameSize + 0x100;

    /// <summary>
    /// Fills in where an aimed fault goes, unless the scenario said (parameter "address"): a wild
    /// write or a wild DMA into the kernel region at <see cref="KernelTargetAddress"/>; a wild DMA
    /// into another driver's buffer at the work ring (a NIC's receive ring, a disk's submission queue)
    /// of the device named by parameter "device", or else of the first device bound to another
    /// driver. As a physical address: with the IOMMU off that is where the device writes; with it on,
    /// the same number is an I/O address the driver's domain does not map. Left as it is when there is
    /// nothing to aim at (no other driver's device is bound yet): the fault then never fires.
    /// </summary>
    public Protocol.FaultSpec Aim(KernelDriver driver, Protocol.FaultSpec spec)
    {
        if (spec.Parameters.ContainsKey("address"))
        {
            return spec;
        }

        long? target = spec.Fault switch
        {
            "wild-dma-kernel" or "wild-write" => KernelTargetAddress,
            "wild-dma-other-driver" => _bindings.Values
                .Where(b => b.Driver != driver && b.Driver.Name != driver.Name
                    && (!spec.Parameters.TryGetValue("device", out var name) || b.Model.Name.Equals(name, StringComparison.OrdinalIgnoreCase)))
                .OrderBy(b => b.DeviceId)
                .Select(b => (long?)WorkRingPhysical(b))
                .FirstOrDefault(),
            _ => null,
        };
        return target is not { } address
            ? spec
            : spec with { Parameters = new Dictionary<string, string>(spec.Parameters) { ["address"] = string.Create(CultureInfo.InvariantCulture, $"0x{address:x}") } };
    }

    /// <summary>Where a device's work ring is in physical memory (the start of its window if its
    /// driver has not programmed one yet).</summary>
    private static long WorkRingPhysical(DeviceBinding binding)
    {
        var start = binding.Frame << PhysicalMemory.FrameShift;
        return binding.Model.WorkRing is { } ring && ring >= binding.DeviceAddress && ring - binding.DeviceAddress < (ulong)binding.Pages * PhysicalMemory.FrameSize
            ? start + (long)(ring - binding.DeviceAddress)
            : start;
    }

    /// <summary>The physical address and length of the DMA window a device's driver holds now.</summary>
    public (long Physical, int Length)? WindowOf(string deviceName)
    {
        var binding = _bindings.Values.FirstOrDefault(b => b.Model.Name.Equals(deviceName, StringComparison.OrdinalIgnoreCase));
        return binding is null ? null : (binding.Frame << PhysicalMemory.FrameShift, binding.Pages * PhysicalMemory.FrameSize);
    }

    public void Dispose()
    {
        Iommu.Dispose();
        Memory.Dispose();
    }

    private string? Own(IHostChannel from, int deviceId, out DeviceBinding binding)
    {
        if (!_bindings.TryGetValue(deviceId, out binding!))
        {
            return string.Create(CultureInfo.InvariantCulture, $"device {deviceId} has no hardware bound to a driver");
        }

        return binding.Host == from ? null : string.Create(CultureInfo.InvariantCulture, $"device {deviceId} belongs to {binding.Driver.Name}, not to this host");
    }

    private sealed class DriverDomain(IommuDomain iommu)
    {
        public IommuDomain Iommu { get; } = iommu;

        public List<DeviceBinding> Bindings { get; } = [];
    }

    private sealed record DeviceBinding(int DeviceId, KernelDriver Driver, IHostChannel Host, DeviceModel Model, DriverDomain Domain, long Frame, int Pages, ulong DeviceAddress);
}
