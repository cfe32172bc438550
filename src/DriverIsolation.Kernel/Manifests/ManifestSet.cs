namespace DriverIsolation.Kernel;

/// <summary>Checks that a set of manifests fits together before anything is loaded.</summary>
internal static class ManifestSet
{
    public static void Validate(IReadOnlyList<DriverManifest> manifests)
    {
        var drivers = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        var names = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var manifest in manifests)
        {
            if (!drivers.Add(manifest.Name))
            {
                throw new ManifestException(manifest.Source, "$.name", $"another manifest already names a driver \"{manifest.Name}\"");
            }

            for (var i = 0; i < manifest.Devices.Count; i++)
            {
                var device = manifest.Devices[i];
                Claim(names, device.Name, manifest, $"$.devices[{i}].name");
                for (var j = 0; j < device.Links.Count; j++)
                {
                    Claim(names, device.Links[j], manifest, $"$.devices[{i}].links[{j}]");
                }
            }
        }

        var nics = manifests.SelectMany(m => m.Devices).Where(d => d.Hardware?.Kind == "nic").Select(d => d.Name).ToHashSet(StringComparer.OrdinalIgnoreCase);
        foreach (var manifest in manifests)
        {
            for (var i = 0; i < manifest.Devices.Count; i++)
            {
                if (manifest.Devices[i].Hardware?.Peer is { } peer && (!nics.Contains(peer) || peer.Equals(manifest.Devices[i].Name, StringComparison.OrdinalIgnoreCase)))
                {
                    throw new ManifestException(manifest.Source, $"$.devices[{i}].hardware.peer",
                        $"\"{peer}\" is not another NIC in this set (NICs: {string.Join(", ", nics.Order(StringComparer.OrdinalIgnoreCase))})");
                }
            }

            for (var i = 0; i < manifest.AttachTo.Count; i++)
            {
                if (!names.ContainsKey(manifest.AttachTo[i]))
                {
                    throw new ManifestException(manifest.Source, $"$.attachTo[{i}]",
                        $"no driver in this set creates \"{manifest.AttachTo[i]}\" (known: {string.Join(", ", names.Keys.Order(StringComparer.OrdinalIgnoreCase))})");
                }
            }
        }
    }

    private static void Claim(Dictionary<string, string> names, string name, DriverManifest manifest, string field)
    {
        if (!names.TryAdd(name, manifest.Name))
        {
            throw new ManifestException(manifest.Source, field, $"the name \"{name}\" is already taken by driver {names[name]}");
        }
    }
}
