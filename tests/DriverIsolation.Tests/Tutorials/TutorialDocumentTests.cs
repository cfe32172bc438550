namespace DriverIsolation.Tests;

/// <summary>How a tutorial's markdown becomes the script <see cref="TutorialTests"/> runs: which
/// blocks run, which are written as files, which are checked against the repository, and which
/// are only for the reader. No processes: these run in milliseconds.</summary>
public sealed class TutorialDocumentTests
{
    [Fact]
    public void Parse_ShBlocksInOrder_OutputAndOtherLanguagesAndNoTestLeftOut()
    {
        var tutorial = TutorialDocument.Parse("t.md", """
            # A tutorial

            ```sh
            drviso demo
            ```

            ```text
            DriverIsolation demo: ...
            ```

            ```csharp
            var x = 1;
            ```

            ```sh no-test
            dotnet run -c Release --project bench/DriverIsolation.Benchmarks -- --filter '*'
            ```

            ```
            an unlabelled block
            ```

            ```sh
            drviso drivers
            drviso inject VBlock kill
            ```
            """);

        Assert.Equal(
            [(TutorialStepKind.Commands, 3, "drviso demo\n"), (TutorialStepKind.Commands, 23, "drviso drivers\ndrviso inject VBlock kill\n")],
            tutorial.Steps.Select(s => (s.Kind, s.Line, s.Body)));
    }

    [Fact]
    public void Parse_WriteAndShowsMarkers_TakeTheNextBlockWhateverItsLanguage()
    {
        var tutorial = TutorialDocument.Parse("t.md", """
            <!-- write: drivers/Hello/driver.json -->
            ```json
            { "name": "Hello" }
            ```

            <!-- shows: scenarios/quick.json -->

            ```json
            { "name": "quick" }
            ```
            """);

        Assert.Equal(
            [(TutorialStepKind.Write, "drivers/Hello/driver.json", "{ \"name\": \"Hello\" }\n"), (TutorialStepKind.Shows, "scenarios/quick.json", "{ \"name\": \"quick\" }\n")],
            tutorial.Steps.Select(s => (s.Kind, s.Path!, s.Body)));
        Assert.Equal("scenarios/quick.json", Assert.Single(tutorial.Quotes).Path);
    }

    [Fact]
    public void ToScript_CommandsAndFilesInDocumentOrder_EachMarkedWithItsLine()
    {
        var script = TutorialDocument.Parse("t.md", """
            ```sh
            mkdir -p drivers/Hello
            ```
            <!-- write: drivers/Hello/Hello.cs -->
            ```csharp
            class Hello { string s = "$HOME `x`"; }
            ```
            ```sh
            dotnet build drivers/Hello
            ```
            """).ToScript();

        Assert.Equal("""
            echo '### t.md:1'
            mkdir -p drivers/Hello
            echo '### t.md:5: writing drivers/Hello/Hello.cs'
            mkdir -p 'drivers/Hello'
            cat > 'drivers/Hello/Hello.cs' <<'TUTORIAL_EOF'
            class Hello { string s = "$HOME `x`"; }
            TUTORIAL_EOF
            echo '### t.md:8'
            dotnet build drivers/Hello

            """, script);
    }

    [Theory]
    [InlineData("/etc/passwd")]
    [InlineData("../outside.json")]
    [InlineData("drivers/../../outside.json")]
    [InlineData("drivers/it's.json")]
    public void Parse_MarkerPathOutsideTheWorkingDirectoryOrHardToQuote_IsRefused(string path)
    {
        var error = Assert.Throws<FormatException>(() => TutorialDocument.Parse("t.md", $"<!-- write: {path} -->\n```json\n{{}}\n```\n"));

        Assert.Contains($"t.md:1: \"{path}\" must be a relative path", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Parse_MarkerNotFollowedByABlock_IsRefused()
    {
        var error = Assert.Throws<FormatException>(() => TutorialDocument.Parse("t.md", "<!-- write: a.json -->\nsome text\n```json\n{}\n```\n"));

        Assert.Equal("t.md:2: <!-- write: a.json --> must be followed by a fenced block", error.Message);
    }

    [Fact]
    public void Parse_UnclosedBlock_IsRefused()
    {
        var error = Assert.Throws<FormatException>(() => TutorialDocument.Parse("t.md", "text\n```sh\ndrviso demo\n"));

        Assert.Equal("t.md:2: a fenced block that never closes", error.Message);
    }

    [Fact]
    public void Sandbox_FoldersATutorialWritesInto_AreNotLinkedToTheRepository()
    {
        using var sandbox = new TutorialSandbox(["drivers/Null/driver.json", "docs/tutorial/x.md"]);

        Assert.False(Path.Exists(sandbox.PathOf("drivers/Null")));
        Assert.False(Path.Exists(sandbox.PathOf("docs")));
        Assert.NotNull(new DirectoryInfo(sandbox.PathOf("drivers/RamDisk")).LinkTarget);
        Assert.NotNull(new DirectoryInfo(sandbox.PathOf("scenarios")).LinkTarget);
    }

    [Fact]
    public void Sandbox_Dispose_RemovesItsLinksNotWhatTheyPointAt()
    {
        string root;
        using (var sandbox = new TutorialSandbox([]))
        {
            root = sandbox.Root;
            Assert.True(File.Exists(sandbox.PathOf("scenarios/quick.json")));
            Assert.NotNull(new DirectoryInfo(sandbox.PathOf("scenarios")).LinkTarget);
            Assert.Null(new DirectoryInfo(sandbox.PathOf("drivers")).LinkTarget);
            Assert.Null(new DirectoryInfo(sandbox.PathOf("src/DriverIsolation.Abstractions")).LinkTarget);
            Assert.False(Directory.Exists(sandbox.PathOf("src/DriverIsolation.Abstractions/bin")));
        }

        Assert.False(Directory.Exists(root));
        Assert.True(File.Exists(Path.Combine(TutorialSandbox.RepoRoot, "scenarios", "quick.json")));
        Assert.True(File.Exists(Path.Combine(TutorialSandbox.RepoRoot, "drivers", "Null", "driver.json")));
    }
}
