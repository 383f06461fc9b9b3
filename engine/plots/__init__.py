"""hotloop's offline HTML reports' building blocks (pure string builders, no dependencies):

    svg     xy charts (lines, points with tooltips, steps, bars; markers, a reference line)
    gantt   a Gantt strip: one lane per category, one bar per interval
    page    the shared stylesheet and cell formatting

Used by the load tester's report (engine.loadtest.report) and the run report (engine.report).
"""
