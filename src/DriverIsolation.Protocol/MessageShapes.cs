using System.Collections.Frozen;
using System.Reflection;
using MessagePack;

namespace DriverIsolation.Protocol;

/// <summary>
/// The exact shape of every message kind, from its attributes: how many fields its array has and
/// which fields may not be nil. MessagePack itself fills a missing field with its default and
/// takes nil for any reference type; from an untrusted peer, both are errors.
/// </summary>
internal static class MessageShapes
{
    private static readonly FrozenDictionary<int, Shape> ByKey = typeof(Message).GetCustomAttributes<UnionAttribute>()
        .ToFrozenDictionary(u => u.Key, u => Shape.Of(u.SubType));

    public static bool TryGet(int key, out Shape shape) => ByKey.TryGetValue(key, out shape!);

    internal sealed class Shape(Type type, int fieldCount, PropertyInfo[] nonNullable)
    {
        public Type Type { get; } = type;

        public int FieldCount { get; } = fieldCount;

        public static Shape Of(Type type)
        {
            var nullability = new NullabilityInfoContext();
            var keyed = type.GetProperties().Where(p => p.GetCustomAttribute<KeyAttribute>() is not null).ToArray();
            var nonNullable = keyed
                .Where(p => !p.PropertyType.IsValueType && nullability.Create(p).ReadState == NullabilityState.NotNull)
                .ToArray();
            return new Shape(type, keyed.Length, nonNullable);
        }

        /// <summary>The first field that is nil but may not be, or null if there is none.</summary>
        public string? FirstNilField(Message message)
        {
            foreach (var property in nonNullable)
            {
                if (property.GetValue(message) is null)
                {
                    return property.Name;
                }
            }

            return null;
        }
    }
}
