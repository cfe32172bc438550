namespace DriverIsolation.Kernel;

/// <summary>
/// The object namespace: devices by name (<c>\Device\Null</c>) and symbolic links to them
/// (<c>\??\NUL</c>). Names are case-insensitive, as on Windows. Links may point at links; a chain
/// longer than <see cref="MaxLinkDepth"/> (a loop, most likely) does not resolve.
/// </summary>
internal sealed class ObjectNamespace
{
    public const int MaxLinkDepth = 8;

    private readonly Lock _gate = new();
    private readonly Dictionary<string, KernelDevice> _devices = new(StringComparer.OrdinalIgnoreCase);
    private readonly Dictionary<string, string> _links = new(StringComparer.OrdinalIgnoreCase);

    public void AddDevice(KernelDevice device)
    {
        lock (_gate)
        {
            if (_links.ContainsKey(device.Name) || !_devices.TryAdd(device.Name, device))
            {
                throw new InvalidOperationException($"the name {device.Name} is taken");
            }
        }
    }

    public void AddLink(string link, string target)
    {
        lock (_gate)
        {
            if (_devices.ContainsKey(link) || !_links.TryAdd(link, target))
            {
                throw new InvalidOperationException($"the name {link} is taken");
            }
        }
    }

    /// <summary>Follows links to a device; null if the name leads nowhere.</summary>
    public KernelDevice? Resolve(string path)
    {
        lock (_gate)
        {
            var name = path;
            for (var depth = 0; depth <= MaxLinkDepth; depth++)
            {
                if (_devices.TryGetValue(name, out var device))
                {
                    return device;
                }

                if (!_links.TryGetValue(name, out var target))
                {
                    return null;
                }

                name = target;
            }

            return null;
        }
    }

    public IReadOnlyList<KernelDevice> Devices()
    {
        lock (_gate)
        {
            return [.. _devices.Values.OrderBy(d => d.Name, StringComparer.OrdinalIgnoreCase)];
        }
    }

    public IReadOnlyList<string> LinksTo(string deviceName)
    {
        lock (_gate)
        {
            return [.. _links.Where(l => Resolve(l.Key)?.Name.Equals(deviceName, StringComparison.OrdinalIgnoreCase) == true).Select(l => l.Key).Order(StringComparer.OrdinalIgnoreCase)];
        }
    }
}
