using System.Buffers;
using CsCheck;
using DriverIsolation.Protocol;

namespace DriverIsolation.Tests;

/// <summary>
/// The decoder against arbitrary input: whatever the bytes, the only outcomes are a message,
/// "not a whole frame yet", or a <see cref="ProtocolException"/>. Any other exception (or a hang,
/// or a huge allocation) would be a way for a host to hurt the kernel. CsCheck prints the seed of
/// any failure; add such inputs to <see cref="FrameCodecTests"/> as regression cases.
/// </summary>
public sealed class FrameCodecPropertyTests
{
    private const int Iterations = 20_000;
    private const int MaxFrame = 4096;

    [Fact]
    public void Decode_ArbitraryBytes_OnlyMessageOrNeedMoreOrProtocolException()
    {
        Gen.Byte.Array[0, 300].Sample(bytes => Outcome(bytes) is not null, iter: Iterations);
    }

    [Fact]
    public void Decode_ValidFramesWithFlippedBytes_OnlyMessageOrNeedMoreOrProtocolException()
    {
        var frames = AllMessages.Samples().Select(m => FrameCodec.Encode(m)).ToArray();
        var mutations =
            from index in Gen.Int[0, frames.Length - 1]
            from flips in Gen.Select(Gen.Int[0, 511], Gen.Byte).Array[1, 4]
            select Mutate(frames[index], flips);

        mutations.Sample(bytes => Outcome(bytes) is not null, iter: Iterations);
    }

    [Fact]
    public void Decode_ValidFramesCutShort_NeedMoreOrProtocolException()
    {
        var frames = AllMessages.Samples().Select(m => FrameCodec.Encode(m)).ToArray();
        var cuts =
            from index in Gen.Int[0, frames.Length - 1]
            from keep in Gen.Int[0, 1000]
            select frames[index][..(keep % frames[index].Length)];

        cuts.Sample(bytes => Outcome(bytes) == "need more", iter: Iterations);
    }

    private static byte[] Mutate(byte[] frame, (int Position, byte Value)[] flips)
    {
        var copy = (byte[])frame.Clone();
        foreach (var (position, value) in flips)
        {
            copy[position % copy.Length] = value;
        }

        return copy;
    }

    /// <summary>"message", "need more" or "protocol error"; any other exception escapes and fails the property.</summary>
    private static string Outcome(byte[] bytes)
    {
        var sequence = new ReadOnlySequence<byte>(bytes);
        try
        {
            if (!FrameCodec.TryReadFrame(ref sequence, MaxFrame, out var body))
            {
                return "need more";
            }

            FrameCodec.DecodeBody(body, FrameCodec.UntrustedOptions);
            return "message";
        }
        catch (ProtocolException)
        {
            return "protocol error";
        }
    }
}
