// tsx for the test runner's process, registered once it runs in Stryker's sandbox: tsx applies
// tsconfig.json (experimentalDecorators) only to files under the directory it was started in.
import 'tsx';
